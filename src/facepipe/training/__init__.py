"""The training engine both trainers share: process/device (`context`), LR schedule and time budget
(`schedule`), rank-sharded checkpoints and resume checks (`checkpoint`), the step loop (`loop`), model
averaging (`average`)."""
