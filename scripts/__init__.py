"""Scripts for developers and CI. The Python ones that use the tests' harness run as modules
from the repository's root (`python -m scripts.run_gcp_emulated`)."""
