"""Starlette: enqueue from a handler, report the result, dashboard behind the app's login."""

import os
import secrets

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import errands
from errands.dashboard import create_app

from .jobs import CountWords

ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "change-me")


def is_admin(request: Request) -> bool:
    """The application's own notion of an administrator: a logged-in session."""
    return request.session.get("user") == "admin"


async def login(request: Request) -> JSONResponse:
    form = await request.form()
    if not secrets.compare_digest(str(form.get("password", "")), ADMIN_PASSWORD):
        return JSONResponse({"logged_in": False}, status_code=403)
    request.session["user"] = "admin"
    return JSONResponse({"logged_in": True})


async def submit(request: Request) -> JSONResponse:
    document = await request.json()
    job = await CountWords(str(document["text"])).run_in_worker_async()
    assert job is not None
    return JSONResponse({"job": str(job.uuid)}, status_code=202)


async def job(request: Request) -> JSONResponse:
    """The job's state; with ``?wait=seconds``, wait that long for its final result."""
    job_id = request.path_params["job_id"]
    wait = float(request.query_params.get("wait", 0))
    found: errands.JobRequest | errands.JobProcess | errands.JobResult | None
    try:
        if wait:
            found = await errands.wait_for_result_async(job_id, timeout=wait)
        else:
            found = errands.get(job_id)
    except TimeoutError:
        found = errands.get(job_id)
    except LookupError:
        found = None
    if found is None:
        return JSONResponse({"error": "no such job"}, status_code=404)
    if not isinstance(found, errands.JobResult):
        return JSONResponse({"status": "PENDING"})
    return JSONResponse({"status": str(found.status), "result": found.return_value})


app = Starlette(
    routes=[
        Route("/login", login, methods=["POST"]),
        Route("/documents", submit, methods=["POST"]),
        Route("/jobs/{job_id}", job),
        # The dashboard lets in whoever the application lets in.
        Mount("/errands", app=create_app(authenticate=is_admin)),
    ],
    middleware=[
        Middleware(SessionMiddleware, secret_key=os.environ.get("SECRET_KEY", "change-me-too"))
    ],
)
