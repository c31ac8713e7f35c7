import sys

from tinytl_tf.ondevice.cli import main

sys.exit(main())
