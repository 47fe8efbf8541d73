"""FastAPI: enqueue from a handler, report the result, dashboard behind the app's login."""

import os
import secrets

from fastapi import FastAPI, Form, HTTPException, Request
from pydantic import BaseModel
from starlette.middleware.sessions import SessionMiddleware

import errands
from errands.dashboard import create_app

from .jobs import CountWords

ADMIN_PASSWORD = os.environ.get("ADMIN_PASSWORD", "change-me")

app = FastAPI()
app.add_middleware(SessionMiddleware, secret_key=os.environ.get("SECRET_KEY", "change-me-too"))


def is_admin(request: Request) -> bool:
    """The application's own notion of an administrator: a logged-in session."""
    return request.session.get("user") == "admin"


# The dashboard lets in whoever the application lets in.
app.mount("/errands", create_app(authenticate=is_admin))


@app.post("/login")
def login(request: Request, password: str = Form()) -> dict[str, bool]:
    if not secrets.compare_digest(password, ADMIN_PASSWORD):
        raise HTTPException(status_code=403)
    request.session["user"] = "admin"
    return {"logged_in": True}


class Document(BaseModel):
    text: str


@app.post("/documents", status_code=202)
async def submit(document: Document) -> dict[str, str]:
    # Awaited on the event loop (PostgreSQL: an async connection; SQLite: a thread).
    request = await CountWords(document.text).run_in_worker_async()
    assert request is not None  # CountWords has no concurrency key: never declined
    return {"job": str(request.uuid)}


@app.get("/jobs/{job_id}")
async def job(job_id: str, wait: float = 0) -> dict[str, object]:
    """The job's state; with ``wait`` (seconds), wait that long for its final result."""
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
        raise HTTPException(status_code=404)
    if not isinstance(found, errands.JobResult):
        return {"status": "PENDING"}
    return {"status": str(found.status), "result": found.return_value}
