"""The viewer's JavaScript and CSS (package data), inlined into report.html by html_page."""
