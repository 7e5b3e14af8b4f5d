"""The registry over HTTP: the distribution protocol, authentication and the web pages."""
