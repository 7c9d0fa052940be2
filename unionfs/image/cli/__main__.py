from unionfs.image.cli import main

raise SystemExit(main())
