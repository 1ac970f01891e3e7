from dropbox_daemon.cli import main

raise SystemExit(main())
