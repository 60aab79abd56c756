"""Reading CT volumes and masks in one canonical orientation, finding cases, checking datasets."""
