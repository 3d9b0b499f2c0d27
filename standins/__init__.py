"""Local stand-ins for the services the Pulse worker talks to."""
