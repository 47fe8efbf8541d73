-- Expiry (errands.expiry): see the PostgreSQL migration of the same name.
ALTER TABLE errands_request ADD COLUMN expires_at REAL;
ALTER TABLE errands_process ADD COLUMN expires_at REAL;
ALTER TABLE errands_result ADD COLUMN expires_at REAL;

CREATE INDEX errands_request_expires ON errands_request (expires_at)
    WHERE expires_at IS NOT NULL;
