from diffeval.cli import main

raise SystemExit(main())
