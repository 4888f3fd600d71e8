"""Reports and the Models page: data gathering, Jinja2 templates and static files."""
