"""Run profiles shipped with fedlaunch: `fedlaunch --profile NAME` reads NAME.toml from here."""
