-- The dashboard's shared secrets (such as the key signing its session cookie when
-- none is configured: the first process inserts a random one, the others read it)
-- and its logins: a session cookie is honoured only while its row exists and has
-- not expired, so logging out refuses every copy of the cookie. The id is a hash
-- of the cookie's session id: reading this table does not let anyone log in.
CREATE TABLE errands_secret (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE errands_dashboard_session (
    id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
