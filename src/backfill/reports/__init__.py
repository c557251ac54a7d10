"""What people read: the summary, the HTML report, exports and SQL queries."""
