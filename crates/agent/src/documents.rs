//! The env contract's `AGENT_DOCUMENTS` onto the coordination crate's
//! [`DocumentFamily`] (the contract crate does not depend on coordination).

use delibera_coordination::DocumentFamily;
use delibera_deploy::AgentDocuments;

/// The family an agent configured with `documents` writes.
pub(crate) fn family(documents: AgentDocuments) -> DocumentFamily {
    match documents {
        AgentDocuments::Delibera => DocumentFamily::Delibera,
        AgentDocuments::Reference => DocumentFamily::Reference,
    }
}
