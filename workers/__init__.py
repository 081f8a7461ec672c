"""rankstudy: workers."""
