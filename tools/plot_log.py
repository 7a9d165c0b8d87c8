"""Plot a training run's losses, LR and mAP: python tools/plot_log.py WORK_DIR [--out PNG].

The code is in vggdet/cli/plot_log.py (also installed as `vggdet-plot-log`);
`python tools/plot_log.py --help` lists the flags."""
import sys

from vggdet.cli.plot_log import main

if __name__ == "__main__":
    sys.exit(main())
