//! `generic` routes: any HTTP service. Only the method is known to mean anything.

use super::{Classified, Request, read_or_write};

pub(super) fn classify(request: &Request<'_>) -> Classified {
    Classified::bare(read_or_write(request.method))
}
