"""rankstudy: dashboards."""
