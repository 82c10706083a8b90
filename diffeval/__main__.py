from diffeval.cli.main import main

raise SystemExit(main())
