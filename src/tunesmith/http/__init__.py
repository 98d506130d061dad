"""What a route module needs from the server, one floor below tasks/ so that a task's package can hold its own
HTTP routes (tasks/<name>/routes.py) without importing tunesmith.serving: the context handed to add_routes
(the served models, the caps, the metrics), OpenAI-shaped errors, and the request checks every route shares.

A route module has GROUP (its name), PATHS (the URLs it answers) and add_routes(app, context); the server
(serving/app.py) adds the modules of the runs it serves and puts its guard (API key, body size, concurrency
slots, Prometheus counts) in front of every one of them."""
