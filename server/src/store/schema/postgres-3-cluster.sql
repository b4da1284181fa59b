-- The cluster's identity: every replica on this database labels its containers
-- with it, and removes orphaned containers of this cluster only (never those of
-- another server or cluster that shares the engine).
CREATE TABLE cluster_identity (id TEXT PRIMARY KEY);
INSERT INTO cluster_identity (id) VALUES (substr(md5(random()::text || clock_timestamp()::text), 1, 16));
