"""The reliability and security suite (issue 9): crashes, hostile files, store faults,
concurrency, the event loop, secrets and chaos. docs/reliability.md maps each
guarantee to the test that proves it.
"""
