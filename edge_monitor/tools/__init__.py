"""Tools for people and tests around the monitor (a software Arduino); the daemon never imports them."""
