"""The HTTP doors: read deadlines, request ids and access log, body limits, the access policy,
the plain-ASGI prediction router, FastAPI's routes and the OpenAPI document. Everything here
translates HTTP to calls into `serving`, and nothing else."""
