"""launcher: the asyncio supervisor that starts, follows and stops a fedlaunch run."""
