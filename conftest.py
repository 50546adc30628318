"""Root test setup: registers the shared fixtures once for tests/ and components/ alike.

One registration means one S3 server and one MLflow server per session, however many folders run.
"""

pytest_plugins = ["tests.fixtures.common", "tests.fixtures.services", "tests.fixtures.synth"]
