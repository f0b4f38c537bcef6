//! Test guest: the tagger at version 2.
const TAG: &str = "v2";
include!("../../tagger.rs");
