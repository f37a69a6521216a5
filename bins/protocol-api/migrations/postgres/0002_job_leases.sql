-- Per-job leases: the replica driving a job's steps, or finishing its
-- registration, holds the job until `leased_until` and renews it while it
-- works; a job whose lease has run out is any replica's to claim. Lease
-- times are the database's clock, so the replicas' clocks need not agree.
ALTER TABLE jobs ADD COLUMN leased_by TEXT, ADD COLUMN leased_until TIMESTAMPTZ;
