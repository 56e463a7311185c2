"""The fault suite: a workload of real clients, a seeded nemesis and a checker over the recorded history."""
