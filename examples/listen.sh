tidings listen --token "$USER_TOKEN"    # one JSON event per line; Ctrl-C to stop
