"""Reference masks from the site: corrections received as DICOM SEG, and the site data set."""
