"""One module per `mailwarden` subcommand; each exposes `register(subparsers)`."""
