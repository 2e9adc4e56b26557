"""What the tests share, by concern (fixtures live in tests/conftest.py):

- data: data files in the true on-disk formats (MedMNIST .npz, MNIST IDX)
- cli: the `search` command as a real process
- studies: the one study-file builder, small study files, and one real search with its report
- store: reading a study's trials from a store (SQLite file or URL)
- pg: the test PostgreSQL server, a database per test
- required: what skips where missing, and fails instead where CI requires it ($SEARCH_REQUIRE_*)
- wait: waiting for something to happen; free ports and HTTP for the servers
- signals: a command in its own process group, stopped as a terminal stops it
"""
