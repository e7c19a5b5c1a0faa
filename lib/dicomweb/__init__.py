"""DICOMweb (PACS) support: the datastore with companion series, and the offline DICOM SEG writer."""
