"""One message's way through the listener: the run loop and the message pipeline."""
