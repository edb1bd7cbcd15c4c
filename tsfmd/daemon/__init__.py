"""The daemon around the app: waitress, signals, reload, stop, systemd notify and watchdog."""
