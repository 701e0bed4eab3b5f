"""What a person reads: rich tables, Markdown reports and plots of the JSON documents the stages produce."""
