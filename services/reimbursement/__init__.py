"""reimbursement service."""
