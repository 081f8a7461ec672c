"""rankstudy: orchestrator."""
