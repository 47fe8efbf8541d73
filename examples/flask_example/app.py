"""Flask: enqueue from a view, report the result, dashboard behind the app's login.

The dashboard is an ASGI application; Flask is WSGI. One ASGI server serves both:
``app`` routes /errands to the dashboard and everything else to Flask (through
a2wsgi). The dashboard reads Flask's own signed session cookie to decide.
"""

import os
import secrets

from a2wsgi import WSGIMiddleware
from flask import Flask, abort, jsonify, request, session
from flask.typing import ResponseReturnValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

import errands
from errands.dashboard import create_app

from .jobs import CountWords

ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "change-me")

flask_app = Flask(__name__)
flask_app.secret_key = os.environ.get("SECRET_KEY", "change-me-too")


@flask_app.post("/login")
def login() -> ResponseReturnValue:
    if not secrets.compare_digest(request.form.get("password", ""), ADMIN_PASSWORD):
        abort(403)
    session["user"] = "admin"
    return {"logged_in": True}


@flask_app.post("/documents")
def submit() -> ResponseReturnValue:
    job = CountWords(str(request.get_json()["text"])).run_in_worker()
    assert job is not None
    return {"job": str(job.uuid)}, 202


@flask_app.get("/jobs/<job_id>")
def job(job_id: str) -> ResponseReturnValue:
    """The job's state; with ``?wait=seconds``, wait that long for its final result."""
    wait = float(request.args.get("wait", 0))
    found: errands.JobRequest | errands.JobProcess | errands.JobResult | None
    try:
        found = errands.wait_for_result(job_id, timeout=wait) if wait else errands.get(job_id)
    except TimeoutError:
        found = errands.get(job_id)
    except LookupError:
        found = None
    if found is None:
        abort(404)
    if not isinstance(found, errands.JobResult):
        return jsonify(status="PENDING")
    return jsonify(status=str(found.status), result=found.return_value)


def is_admin(request: Request) -> bool:
    """Flask's session, read from its signed cookie: the same login as the Flask views."""
    cookie = request.cookies.get(flask_app.config["SESSION_COOKIE_NAME"])
    serializer = flask_app.session_interface.get_signing_serializer(flask_app)  # type: ignore[attr-defined]
    if not cookie or serializer is None:
        return False
    try:
        return bool(serializer.loads(cookie).get("user") == "admin")
    except Exception:  # a tampered or expired cookie
        return False


app = Starlette(
    routes=[
        Mount("/errands", app=create_app(authenticate=is_admin)),
        Mount("/", app=WSGIMiddleware(flask_app)),  # type: ignore[arg-type]
    ]
)
