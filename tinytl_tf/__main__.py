import sys

from tinytl_tf.cli import main

sys.exit(main())
