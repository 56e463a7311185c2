"""Local development stack: Kafka, PostgreSQL and the service processes."""
