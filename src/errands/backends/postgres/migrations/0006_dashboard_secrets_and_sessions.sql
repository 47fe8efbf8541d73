-- The dashboard's shared secrets and its logins.
-- errands_secret keeps values every process serving the dashboard must agree on,
-- such as the key signing its session cookie when none is configured: the first
-- process inserts a random one, the others read it.
CREATE TABLE errands_secret (
    name text PRIMARY KEY,
    value text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per password login not yet ended: a session cookie is honoured only
-- while its row exists and has not expired, so logging out (deleting the row)
-- refuses every copy of the cookie in every process. The id is a hash of the
-- cookie's session id: reading this table does not let anyone log in.
CREATE TABLE errands_dashboard_session (
    id text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

INSERT INTO errands_schema (version) VALUES (6);
