from tests.data.conftest import shared_data  # noqa: F401  (the shared benchmark files)
