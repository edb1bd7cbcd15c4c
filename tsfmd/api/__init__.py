"""The HTTP APIs: the Flask app and its error mapping, TDgpt's wire format."""
