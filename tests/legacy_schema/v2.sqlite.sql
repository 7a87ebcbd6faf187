-- hexnode schema version 2: create_all of hexnode/store/db.py at b303ab4
CREATE TABLE events (
	id INTEGER NOT NULL, 
	entity VARCHAR(16) NOT NULL, 
	entity_id INTEGER NOT NULL, 
	from_state VARCHAR(16), 
	to_state VARCHAR(16) NOT NULL, 
	detail TEXT, 
	at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_events_at ON events (at);
CREATE INDEX ix_events_entity ON events (entity, entity_id);
CREATE TABLE hexnode_meta (
	"key" VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE studies (
	id INTEGER NOT NULL, 
	study_uid TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (study_uid)
);
CREATE TABLE series (
	id INTEGER NOT NULL, 
	series_uid TEXT NOT NULL, 
	study_id INTEGER NOT NULL, 
	calling_ae VARCHAR(16) NOT NULL, 
	modality VARCHAR(16), 
	sop_class_uid TEXT, 
	series_number INTEGER, 
	state VARCHAR(16) NOT NULL, 
	reason TEXT, 
	revision INTEGER NOT NULL, 
	selected BOOLEAN, 
	instance_count INTEGER NOT NULL, 
	first_instance_at DATETIME NOT NULL, 
	last_instance_at DATETIME NOT NULL, 
	state_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (series_uid), 
	FOREIGN KEY(study_id) REFERENCES studies (id)
);
CREATE INDEX ix_series_last_instance_at ON series (last_instance_at);
CREATE INDEX ix_series_state ON series (state);
CREATE INDEX ix_series_study_id ON series (study_id);
CREATE TABLE instances (
	id INTEGER NOT NULL, 
	sop_instance_uid TEXT NOT NULL, 
	series_id INTEGER NOT NULL, 
	sop_class_uid TEXT NOT NULL, 
	transfer_syntax TEXT NOT NULL, 
	path TEXT NOT NULL, 
	size_bytes INTEGER NOT NULL, 
	calling_ae VARCHAR(16) NOT NULL, 
	instance_number INTEGER, 
	position JSON, 
	orientation JSON, 
	rows INTEGER, 
	columns INTEGER, 
	number_of_frames INTEGER, 
	slice_thickness FLOAT, 
	images_in_acquisition INTEGER, 
	received_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (sop_instance_uid), 
	FOREIGN KEY(series_id) REFERENCES series (id)
);
CREATE INDEX ix_instances_series_id ON instances (series_id);
CREATE TABLE jobs (
	id INTEGER NOT NULL, 
	series_id INTEGER NOT NULL, 
	revision INTEGER NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until DATETIME, 
	error TEXT, 
	timings JSON, 
	created_at DATETIME NOT NULL, 
	started_at DATETIME, 
	finished_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (series_id, revision), 
	FOREIGN KEY(series_id) REFERENCES series (id)
);
CREATE INDEX ix_jobs_series_id ON jobs (series_id);
CREATE INDEX ix_jobs_state_id ON jobs (state, id);
CREATE TABLE results (
	id INTEGER NOT NULL, 
	job_id INTEGER NOT NULL, 
	series_id INTEGER NOT NULL, 
	kind VARCHAR(8) NOT NULL, 
	sop_instance_uid TEXT NOT NULL, 
	sop_class_uid TEXT NOT NULL, 
	path TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(job_id) REFERENCES jobs (id), 
	FOREIGN KEY(series_id) REFERENCES series (id), 
	UNIQUE (sop_instance_uid)
);
CREATE INDEX ix_results_job_id ON results (job_id);
CREATE INDEX ix_results_series_id ON results (series_id);
CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	result_id INTEGER NOT NULL, 
	destination VARCHAR(64) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	attempts INTEGER NOT NULL, 
	next_attempt_at DATETIME NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_until DATETIME, 
	created_at DATETIME NOT NULL, 
	queued_at DATETIME, 
	last_error TEXT, 
	delivered_at DATETIME, 
	PRIMARY KEY (id), 
	UNIQUE (result_id, destination), 
	FOREIGN KEY(result_id) REFERENCES results (id)
);
CREATE INDEX ix_outbox_result_id ON outbox (result_id);
CREATE INDEX ix_outbox_state_due ON outbox (state, next_attempt_at);
INSERT INTO hexnode_meta (key, value) VALUES ('schema_version', '2');
