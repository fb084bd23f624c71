"""Jobs and where they are kept: the job record, the one job-store interface and its stores."""
