"""Adapters for Google Cloud: GCS blobs, Firestore state, Cloud Tasks builds, signed URLs."""
