-- The training worker: when a job was last turned away because its organization already
-- runs its quota of jobs (settings.jobs.org_concurrency). The delivery is acked and the
-- job stays queued; the reaper offers it again once the mark is older than its period and
-- clears the mark. NULL: not waiting on the quota.
ALTER TABLE jobs ADD COLUMN deferred_at timestamptz;
CREATE INDEX jobs_deferred_idx ON jobs (deferred_at) WHERE state = 'queued' AND deferred_at IS NOT NULL;
