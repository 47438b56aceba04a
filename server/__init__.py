"""The web page: a FastAPI app (server/app.py) and a page in plain HTML, CSS and JavaScript (server/static/)."""
