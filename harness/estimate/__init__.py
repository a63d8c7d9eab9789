"""A sweep's cost before it runs (`cost`): a timed calibration, or counted work at an
assumed rate."""
